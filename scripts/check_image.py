#!/usr/bin/python3
"""Checks one built image's filesystem and configuration (scripts/images.sh, `make images`).

Inside the image (chroot into its mounted root filesystem, as the image's USER, in a private
mount namespace with /proc, /dev and a tmpfs /tmp and /var/lib/raptr, so the image's layers are
never written):
  - every binary's shared libraries resolve (ldd) and its --help exits 0;
  - the coordinator image also carries raptrctl and the sqlite3 shell; the coordinator starts,
    answers /healthz and /metrics on loopback and `raptrctl list` through its gRPC port;
  - the CUDA worker starts the CUDA runtime and, on a machine without a GPU driver, exits 69
    (no usable device) as docs/OPERATIONS.md says, having loaded cuBLAS, cuBLASLt and NCCL.
Against the rendered Kubernetes overlays (every container whose image is raptr-<name>):
  - runAsUser/runAsGroup are the image's numeric USER, which exists in /etc/passwd and owns the
    WORKDIR; no `command:` overrides the ENTRYPOINT; the containerPorts are the EXPOSEd ports;
    every --flag in the container's args is in the image binary's own --help.
"""

import argparse
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

BINARIES = {
    "coordinator": [["/usr/local/bin/raptr-coordinator"], ["/usr/local/bin/raptrctl"]],
    "worker-cpu": [["/usr/local/bin/raptr-worker", "serve"]],
    "worker-cuda": [["/usr/local/bin/raptr-worker", "serve"]],
}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def in_image(rootfs, user, argv, timeout=60, background=False, binds=()):
    """Runs argv chrooted into rootfs as user (uid:gid), with a private /proc, /dev, /tmp and
    /var/lib/raptr, plus binds ((host dir, dir in the image, read_only), onto directories the image
    has); the host's network (loopback) is shared."""
    uid, gid = user.split(":")
    mounts = "".join(
        f'mount --bind "{host}" "$r{inside}"; ' + (f'mount -o remount,bind,ro "$r{inside}"; ' if ro else "")
        for host, inside, ro in binds)
    script = (
        'set -e; r="$1"; shift; '
        'mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
        f'mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"; '
        f'if [ -d "$r/var/lib/raptr" ]; then mount -t tmpfs -o uid={uid},gid={gid},mode=0750 tmpfs "$r/var/lib/raptr"; fi; '
        + mounts +
        f'exec chroot --userspec={uid}:{gid} "$r" "$@"'
    )
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", rootfs] + argv
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/var/lib/raptr", "LANG": "C.UTF-8"}
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_user(config, rootfs):
    user = config.get("User") or ""
    if not re.fullmatch(r"\d+:\d+", user):
        fail(f"USER is {user!r}: want numeric uid:gid (runAsNonRoot can only verify numeric users)")
        return None
    uid, gid = map(int, user.split(":"))
    if uid == 0:
        fail("USER is root")
    passwd = open(os.path.join(rootfs, "etc/passwd")).read().splitlines()
    names = [l.split(":")[0] for l in passwd if l.split(":")[2:4] == [str(uid), str(gid)]]
    if not names:
        fail(f"no /etc/passwd entry with uid {uid} gid {gid}")
    workdir = config.get("WorkingDir") or "/"
    st = os.stat(os.path.join(rootfs, workdir.lstrip("/")))
    if st.st_uid != uid:
        fail(f"WORKDIR {workdir} is owned by uid {st.st_uid}, not {uid}")
    ok(f"USER {user} ({', '.join(names) or '?'}), WORKDIR {workdir} owned by it")
    return user


def check_binaries(name, rootfs, user):
    helps = {}
    for argv in BINARIES[name]:
        exe = argv[0]
        if not os.access(os.path.join(rootfs, exe.lstrip("/")), os.X_OK):
            fail(f"{exe} is not in the image or not executable")
            continue
        r = in_image(rootfs, user, ["ldd", exe])
        missing = [l.strip() for l in r.stdout.splitlines() if "not found" in l]
        if r.returncode != 0 or missing:
            fail(f"ldd {exe}: {' '.join(missing) or r.stdout + r.stderr}")
        else:
            ok(f"ldd {exe}: {len(r.stdout.splitlines())} libraries, all found")
        r = in_image(rootfs, user, argv + ["--help"])
        if r.returncode != 0 or "usage" not in r.stdout.lower():
            fail(f"{' '.join(argv)} --help exited {r.returncode}: {(r.stdout + r.stderr)[-400:]}")
        else:
            ok(f"{' '.join(argv)} --help")
        helps[os.path.basename(exe)] = r.stdout
    return helps


def check_manifests(name, config, user, helps, rendered):
    entry = config.get("Entrypoint") or []
    ports = {int(p.split("/")[0]) for p in (config.get("ExposedPorts") or {})}
    binary = os.path.basename(entry[0]) if entry else ""
    found = 0
    for overlay in sorted(os.listdir(rendered)):
        for doc in yaml.safe_load_all(open(os.path.join(rendered, overlay))):
            if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                continue
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("containers", []):
                repo = c["image"].rsplit("/", 1)[-1].split(":")[0]
                if repo != f"raptr-{name}":
                    continue
                found += 1
                before = len(failures)
                where = f"{overlay[:-5]} {doc['kind']}/{doc['metadata']['name']} container {c['name']}"
                sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
                want = f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}"
                if user and want != user:
                    fail(f"{where}: runs as {want}, the image's USER is {user}")
                if c.get("command") and c["command"] != entry:
                    fail(f"{where}: command {c['command']} replaces the image's ENTRYPOINT {entry}")
                cports = {p["containerPort"] for p in c.get("ports", [])}
                if cports != ports:
                    fail(f"{where}: containerPorts {sorted(cports)} != the image's EXPOSE {sorted(ports)}")
                text = helps.get(binary, "")
                unknown = [a.split("=")[0] for a in c.get("args", [])
                           if a.startswith("--") and not re.search(re.escape(a.split("=")[0]) + r"\b", text)]
                if unknown:
                    fail(f"{where}: args {unknown} are not in the image's {binary} --help")
                if len(failures) == before:
                    ok(f"{where}: user {want}, entrypoint {' '.join(entry)}, ports {sorted(ports)}, "
                       f"{len(c.get('args', []))} args known to the image's {binary}")
    if found == 0:
        fail(f"no container in the rendered overlays uses raptr-{name}")


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_healthz(proc, port, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            if http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return True
        except OSError:
            time.sleep(0.3)
    fail(f"{what} did not answer /healthz within {seconds} s"
         + (f" (exited {proc.returncode}: {proc.stdout.read()[-600:]})" if proc.poll() is not None else ""))
    return False


def stop(proc, what, seconds, want_exit_0=False):
    """SIGTERM, then SIGKILL after `seconds`; a process that needed the kill is a failure."""
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail(f"{what} did not exit within {seconds} s of SIGTERM")
        return
    if want_exit_0 and proc.returncode != 0:
        fail(f"{what} exited {proc.returncode} on SIGTERM")


def smoke_coordinator(rootfs, user):
    grpc, metrics = free_port(), free_port()
    proc = in_image(rootfs, user, [
        "/usr/local/bin/raptr-coordinator", f"--listen=127.0.0.1:{grpc}", f"--metrics-listen=127.0.0.1:{metrics}",
        "--store=/var/lib/raptr/coordinator.db", "--checkpoint-dir=/tmp/checkpoints"], background=True)
    try:
        if not wait_healthz(proc, metrics, "the coordinator"):
            return
        _, text = http_get(f"http://127.0.0.1:{metrics}/metrics")
        if "raptr_" not in text:
            fail("/metrics has no raptr_ series")
        r = in_image(rootfs, user, ["/usr/local/bin/raptrctl", "list", f"--coordinator=127.0.0.1:{grpc}"])
        if r.returncode != 0:
            fail(f"raptrctl list exited {r.returncode}: {r.stdout + r.stderr}")
        r2 = in_image(rootfs, user, ["sqlite3", "-version"])
        if r2.returncode != 0:
            fail(f"sqlite3 -version exited {r2.returncode}")
        if r.returncode == 0 and r2.returncode == 0:
            ok(f"coordinator serves /healthz, /metrics ({text.count(chr(10))} lines), raptrctl list "
               f"over gRPC; sqlite3 {r2.stdout.split()[0]}")
    finally:
        stop(proc, "the coordinator", 20, want_exit_0=True)


def smoke_cuda_worker(rootfs, user):
    if os.path.exists("/dev/nvidia0"):
        print("  (a GPU is present: the no-device exit is not checked)")
        return
    r = in_image(rootfs, user, ["/usr/local/bin/raptr-worker", "serve", "--backend=cuda", "--device=0",
                                "--coordinator=127.0.0.1:1", "--metrics-listen=127.0.0.1:0"])
    if r.returncode != 69 or "CUDA" not in r.stdout + r.stderr:
        fail(f"raptr-worker --backend=cuda without a GPU exited {r.returncode}, want 69: {(r.stdout + r.stderr)[-400:]}")
    else:
        ok("raptr-worker --backend=cuda without a GPU driver exits 69: "
           + (r.stdout + r.stderr).strip().splitlines()[-1].split(": ", 1)[-1][:160])


SMOKE_SPEC = """\
# scripts/check_image.py: a job trained by the images (coordinator image + CPU worker image).
name: image-smoke
model: {kind: gpt, layers: 4, d_model: 32, heads: 2, vocab_size: 1024}
data:
  train_shards: [/shared/data/corpus/train.bin]
  val_shards: [/shared/data/corpus/val.bin]
training: {batch: 4, seq: 32, steps: 40, eval_every: 20, checkpoint_every: 20}
optimizer: {lr: 2e-3, warmup_steps: 4}
schedule:
  raptr:
    stages: [{path_length: 2, steps: 20}, {path_length: 4, steps: 20}]
    fixed_layers: [0, 3]
resources: {min_workers: 1, max_workers: 1, backend: cpu}
"""


def job_smoke(coord_rootfs, worker_rootfs, user, data, work):
    """The coordinator image and the CPU worker image train one small RaPTr job on loopback,
    sharing /shared/checkpoints (a host directory) as the Kubernetes PVC does."""
    print("raptr-coordinator + raptr-worker-cpu: a job on loopback")
    uid, gid = map(int, user.split(":"))
    ckpt, spec_dir = os.path.join(work, "smoke-checkpoints"), os.path.join(work, "smoke-spec")
    for d in (ckpt, spec_dir):
        subprocess.run(["rm", "-rf", d], check=True)
        os.makedirs(d)
        os.chown(d, uid, gid)
    with open(os.path.join(spec_dir, "job.yaml"), "w") as f:
        f.write(SMOKE_SPEC)
    data_bind = (data, "/shared/data", True)
    grpc, cmetrics, wmetrics = free_port(), free_port(), free_port()
    coord = in_image(coord_rootfs, user, [
        "/usr/local/bin/raptr-coordinator", f"--listen=127.0.0.1:{grpc}", f"--metrics-listen=127.0.0.1:{cmetrics}",
        "--store=/var/lib/raptr/coordinator.db", "--checkpoint-dir=/shared/checkpoints", "--data-root=/shared/data"],
        background=True, binds=[data_bind, (ckpt, "/shared/checkpoints", False)])
    worker = None
    try:
        if not wait_healthz(coord, cmetrics, "the coordinator"):
            return
        worker = in_image(worker_rootfs, user, [
            "/usr/local/bin/raptr-worker", "serve", f"--coordinator=127.0.0.1:{grpc}", "--id=image-smoke-0",
            "--host=127.0.0.1", f"--metrics-listen=127.0.0.1:{wmetrics}", "--threads=1", "--data-root=/shared/data"],
            # As in the StatefulSet: a read-only root filesystem, writable /shared and /tmp only
            # (its WORKDIR, /var/lib/raptr, is not a volume there).
            background=True, binds=[data_bind, (ckpt, "/shared/checkpoints", False),
                                    (f"{worker_rootfs}/var/lib/raptr", "/var/lib/raptr", True)])
        if not wait_healthz(worker, wmetrics, "the worker"):
            return
        ctl = ["/usr/local/bin/raptrctl"]
        binds = [(spec_dir, "/tmp", True)]
        t0 = time.time()
        r = in_image(coord_rootfs, user, ctl + ["submit", f"--coordinator=127.0.0.1:{grpc}", "-f", "/tmp/job.yaml"],
                     binds=binds)
        if r.returncode != 0:
            fail(f"raptrctl submit exited {r.returncode}: {r.stdout + r.stderr}")
            return
        job = r.stdout.strip()
        r = in_image(coord_rootfs, user, ctl + ["watch", job, f"--coordinator=127.0.0.1:{grpc}", "--step-every=20"],
                     timeout=600)
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        if r.returncode != 0 or "SUCCEEDED" not in r.stdout:
            fail(f"job {job} did not succeed (watch exited {r.returncode}): {' | '.join(tail)}")
            return
        _, text = http_get(f"http://127.0.0.1:{wmetrics}/metrics")
        steps = re.search(r"^raptr_process_steps_total(?:\{[^}]*\})? (\S+)", text, re.M)
        saved = sorted(os.path.relpath(p, os.path.join(ckpt, job))
                       for p in glob.glob(os.path.join(ckpt, job, "generation-*", "checkpoints", "step_*")))
        if not saved:
            fail(f"job {job} left no checkpoint under /shared/checkpoints/{job}")
        ok(f"job {job} SUCCEEDED {time.time() - t0:.1f} s after submit (40 steps, RaPTr paths 2 then 4 of 4 blocks); "
           f"checkpoints {saved}; worker metrics steps {steps.group(1) if steps else '?'}")
    finally:
        for p, what in ((worker, "the worker"), (coord, "the coordinator")):
            if p is not None:
                stop(p, what, 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", choices=sorted(BINARIES))
    ap.add_argument("--inspect", help="podman image inspect output (JSON)")
    ap.add_argument("--rootfs", help="the image's mounted root filesystem")
    ap.add_argument("--rendered", help="directory of `kubectl kustomize` outputs (*.yaml)")
    ap.add_argument("--job-smoke", nargs=2, metavar=("COORDINATOR_ROOTFS", "WORKER_ROOTFS"),
                    help="instead: train a small job with the coordinator and CPU worker images")
    ap.add_argument("--data", help="with --job-smoke: a directory holding train.bin and val.bin (vocab 1024)")
    ap.add_argument("--user", default="10001:10001", help="with --job-smoke: the images' USER")
    ap.add_argument("--work", help="with --job-smoke: a scratch directory on the host")
    a = ap.parse_args()
    if a.job_smoke:
        if not (a.data and a.work):
            ap.error("--job-smoke needs --data and --work")
        job_smoke(a.job_smoke[0], a.job_smoke[1], a.user, os.path.abspath(a.data), os.path.abspath(a.work))
        print("job smoke: " + ("OK" if not failures else f"{len(failures)} check(s) FAILED"))
        return 1 if failures else 0
    if not (a.image and a.inspect and a.rootfs and a.rendered):
        ap.error("--image, --inspect, --rootfs and --rendered are required (or --job-smoke)")
    config = json.load(open(a.inspect))[0]["Config"]
    print(f"raptr-{a.image}: entrypoint {config.get('Entrypoint')} cmd {config.get('Cmd')} "
          f"user {config.get('User')} ports {sorted(config.get('ExposedPorts') or {})}")
    user = image_user(config, a.rootfs)
    if user:
        helps = check_binaries(a.image, a.rootfs, user)
        check_manifests(a.image, config, user, helps, a.rendered)
        if a.image == "coordinator":
            smoke_coordinator(a.rootfs, user)
        if a.image == "worker-cuda":
            smoke_cuda_worker(a.rootfs, user)
    if failures:
        print(f"raptr-{a.image}: {len(failures)} check(s) FAILED")
        return 1
    print(f"raptr-{a.image}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
