"""raptr's Python client: submit, inspect, cancel and follow training jobs.

    import raptr
    with raptr.Client("127.0.0.1:50051", token_file="pki/admin.token", tls="pki/ca.crt") as c:
        job = c.submit("examples/gpt-raptr.yaml")
        for event in c.watch(job):
            if isinstance(event, raptr.Step):
                print(event.step, event.loss)
        print(c.get(job).state)           # "SUCCEEDED"
        rows = c.steps(job)               # one dict per step

The wire code is generated from proto/ at build time (build/python/raptr/v1); this module only
wraps it. Defaults follow raptrctl's: the address from $RAPTR_COORDINATOR, the CA from
$RAPTR_TLS_CA, the token from $RAPTR_TOKEN or the file in $RAPTR_TOKEN_FILE, and a token is
never sent in plaintext except to a loopback address.
"""
import dataclasses
import datetime
import ipaddress
import os
from typing import Iterator, List, Optional

import grpc
from google.protobuf import json_format

from raptr import errors, spec as _spec
from raptr.v1 import job_pb2, job_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def _state(value):
    return job_pb2.JobState.Name(value).replace("JOB_STATE_", "")


def _time(ts):
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Job:
    """A job as the coordinator reports it. `state` is one of PENDING, RUNNING, RECOVERING,
    SUCCEEDED, FAILED, CANCELLED; `spec` is the stored (defaults filled in) spec as a dict;
    `proto` the raptr.v1.Job message."""
    id: str
    name: str
    state: str
    message: str
    owner: str
    step: int
    steps: int
    loss: float
    eval_loss: Optional[float]
    tokens: int
    flops: float
    flops_full: float
    train_seconds: float
    generation: int
    world_size: int
    create_time: Optional[datetime.datetime]
    start_time: Optional[datetime.datetime]
    end_time: Optional[datetime.datetime]
    spec: dict
    proto: job_pb2.Job = dataclasses.field(repr=False, compare=False)

    @property
    def done(self):
        return self.state in TERMINAL

    @staticmethod
    def from_proto(job):
        p = job.progress
        return Job(
            id=job.id, name=job.spec.name, state=_state(job.state), message=job.message,
            owner=job.owner, step=p.step, steps=job.spec.training.steps, loss=p.loss,
            eval_loss=p.eval_loss if p.HasField("eval_loss") else None, tokens=p.tokens,
            flops=p.flops, flops_full=p.flops_full, train_seconds=p.train_seconds,
            generation=job.generation, world_size=job.world_size,
            create_time=_time(job.create_time), start_time=_time(job.start_time),
            end_time=_time(job.end_time),
            spec=json_format.MessageToDict(job.spec, preserving_proto_field_name=True),
            proto=job)


# Events of watch(), one class per kind; `time` is when the coordinator recorded it.
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The job as it was when the watch began (always the first event)."""
    time: Optional[datetime.datetime]
    job: Job


@dataclasses.dataclass(frozen=True)
class StateChanged:
    time: Optional[datetime.datetime]
    old_state: str
    new_state: str
    reason: str
    generation: int
    world_size: int


@dataclasses.dataclass(frozen=True)
class Step:
    """One optimizer step (0-based `step`); FLOPs and tokens are this step's, summed over
    ranks; `eval_loss` is set on steps an evaluation followed."""
    time: Optional[datetime.datetime]
    step: int
    stage: int
    path_length: int
    loss: float
    learning_rate: float
    tokens: int
    flops: float
    flops_full: float
    step_seconds: float
    eval_loss: Optional[float]


@dataclasses.dataclass(frozen=True)
class Eval:
    time: Optional[datetime.datetime]
    step: int
    eval_loss: float
    batches: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    time: Optional[datetime.datetime]
    step: int
    path: str
    generation: int


@dataclasses.dataclass(frozen=True)
class CheckpointRejected:
    time: Optional[datetime.datetime]
    step: int
    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Rewound:
    """The job went back to a checkpoint (after a failure): steps after `to_step` are redone."""
    time: Optional[datetime.datetime]
    to_step: int
    from_step: int


def _step(time, s):
    return Step(time=time, step=s.step, stage=s.stage, path_length=s.path_length, loss=s.loss,
                learning_rate=s.learning_rate, tokens=s.tokens, flops=s.flops,
                flops_full=s.flops_full, step_seconds=s.step_seconds,
                eval_loss=s.eval_loss if s.HasField("eval_loss") else None)


def _event(e):
    t = _time(e.time) if e.HasField("time") else None
    kind = e.WhichOneof("event")
    if kind == "snapshot":
        return Snapshot(t, Job.from_proto(e.snapshot))
    if kind == "state_changed":
        c = e.state_changed
        return StateChanged(t, _state(c.old_state), _state(c.new_state), c.reason, c.generation,
                            c.world_size)
    if kind == "step":
        return _step(t, e.step)
    if kind == "eval":
        return Eval(t, e.eval.step, e.eval.eval_loss, e.eval.batches, e.eval.seconds)
    if kind == "checkpoint":
        return Checkpoint(t, e.checkpoint.step, e.checkpoint.path, e.checkpoint.generation)
    if kind == "checkpoint_rejected":
        r = e.checkpoint_rejected
        return CheckpointRejected(t, r.step, r.path, r.reason)
    if kind == "rewound":
        return Rewound(t, e.rewound.to_step, e.rewound.from_step)
    return None  # a kind this client does not know yet: skipped


@dataclasses.dataclass(frozen=True)
class TLS:
    """TLS settings: `ca` (PEM file the coordinator's certificate must chain to; None: the
    system's roots), `cert` and `key` (a client certificate for mutual TLS), `server_name` (the
    name to expect when it is not the address's host)."""
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    server_name: Optional[str] = None


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} {path}: {e.strerror}") from None


def is_loopback(address):
    host = address.rsplit(":", 1)[0] if not address.startswith("[") else address[1:].split("]")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """A connection to raptr-coordinator's JobService.

    address: HOST:PORT (default $RAPTR_COORDINATOR, else 127.0.0.1:50051).
    token / token_file: the bearer token (default $RAPTR_TOKEN, else the file $RAPTR_TOKEN_FILE).
    tls: None (TLS with $RAPTR_TLS_CA when set, else plaintext), False (plaintext), True (TLS
         with the system's roots), a CA file path, or a TLS(...).
    timeout: seconds each call may take (watch() has none: it lasts as long as the job).
    """

    def __init__(self, address=None, token=None, token_file=None, tls=None, timeout=10.0):
        self.address = address or os.environ.get("RAPTR_COORDINATOR") or DEFAULT_ADDRESS
        self.timeout = timeout
        if token is None:
            token_file = token_file or os.environ.get("RAPTR_TOKEN_FILE") or None
            if token_file:
                token = _read(token_file, "token file").decode().strip()
            else:
                token = os.environ.get("RAPTR_TOKEN") or None
        if tls is None:
            ca = os.environ.get("RAPTR_TLS_CA")
            tls = TLS(ca=ca, cert=os.environ.get("RAPTR_TLS_CERT"),
                      key=os.environ.get("RAPTR_TLS_KEY")) if ca else False
        elif tls is True:
            tls = TLS()
        elif isinstance(tls, (str, os.PathLike)):
            tls = TLS(ca=str(tls))
        if token and not tls and not is_loopback(self.address):
            raise ValueError(f"refusing to send a token in plaintext to {self.address}: give "
                             "tls= (or $RAPTR_TLS_CA)")
        if tls:
            if bool(tls.cert) != bool(tls.key):
                raise ValueError("a client certificate needs both tls.cert and tls.key")
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca, "TLS CA") if tls.ca else None,
                private_key=_read(tls.key, "TLS key") if tls.key else None,
                certificate_chain=_read(tls.cert, "TLS certificate") if tls.cert else None)
            options = [("grpc.ssl_target_name_override", tls.server_name)] \
                if tls.server_name else []
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.address)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = job_pb2_grpc.JobServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout,
                                               metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, method) from None

    # -- jobs ---------------------------------------------------------------------------------

    def submit(self, spec, request_id: str = "", validate_only: bool = False) -> str:
        """Submits a job and returns its id. `spec` is a dict, a YAML file path, a YAML string
        or a raptr.v1.JobSpec; a retry with the same request_id returns the first job.
        validate_only checks and fills defaults, stores nothing, and returns ""."""
        request = job_pb2.SubmitJobRequest(spec=_spec.to_job_spec(spec), request_id=request_id,
                                           validate_only=validate_only)
        return self._call("SubmitJob", request).job.id

    def validate(self, spec) -> dict:
        """The spec as the coordinator would store it (defaults filled in), as a dict; raises
        InvalidSpec naming the field when it would refuse it."""
        request = job_pb2.SubmitJobRequest(spec=_spec.to_job_spec(spec), validate_only=True)
        job = self._call("SubmitJob", request).job
        return json_format.MessageToDict(job.spec, preserving_proto_field_name=True)

    def get(self, job_id: str) -> Job:
        return Job.from_proto(self._call("GetJob", job_pb2.GetJobRequest(job_id=job_id)))

    def list(self, states=(), full: bool = False) -> List[Job]:
        """Every job (oldest first), optionally only those in `states` (names such as
        "RUNNING"); specs are abbreviated (name, steps, schedule kind) unless full."""
        wanted = []
        for s in ([states] if isinstance(states, str) else states):
            name = "JOB_STATE_" + s.upper().replace("JOB_STATE_", "")
            if name not in job_pb2.JobState.keys() or name == "JOB_STATE_UNSPECIFIED":
                raise ValueError(f"states: unknown job state {s!r} (one of "
                                 f"{', '.join(_state(v) for v in job_pb2.JobState.values()[1:])})")
            wanted.append(job_pb2.JobState.Value(name))
        request = job_pb2.ListJobsRequest(
            states=wanted, page_size=100,
            view=job_pb2.JOB_VIEW_FULL if full else job_pb2.JOB_VIEW_BASIC)
        jobs = []
        while True:
            page = self._call("ListJobs", request)
            jobs += [Job.from_proto(j) for j in page.jobs]
            if not page.next_page_token:
                return jobs
            request.page_token = page.next_page_token

    def cancel(self, job_id: str, reason: str = "") -> Job:
        """Cancels a job (idempotent); FailedPrecondition if it already ended otherwise."""
        return Job.from_proto(self._call("CancelJob", job_pb2.CancelJobRequest(
            job_id=job_id, reason=reason)))

    def delete(self, job_id: str) -> str:
        """Deletes an ended job with its history and checkpoints; returns the checkpoint
        directory removed ("" when none). FailedPrecondition for a job that has not ended;
        RaptrError when the record went but the checkpoint files could not."""
        response = self._call("DeleteJob", job_pb2.DeleteJobRequest(job_id=job_id))
        if response.checkpoint_error:
            raise errors.RaptrError(grpc.StatusCode.INTERNAL, response.checkpoint_error,
                                    "DeleteJob")
        return response.removed_checkpoints

    def retry(self, job_id: str, reason: str = "") -> Job:
        """Runs a FAILED job again from its last committed checkpoint (it goes RECOVERING);
        FailedPrecondition for a job that is not FAILED."""
        return Job.from_proto(self._call("RetryJob", job_pb2.RetryJobRequest(
            job_id=job_id, reason=reason)))

    def watch(self, job_id: str, step_every: int = 1, from_start: bool = False,
              follow: bool = True) -> Iterator[object]:
        """The job's events as they happen: a Snapshot first, then StateChanged, Step, Eval,
        Checkpoint, CheckpointRejected and Rewound events, ending after the event that puts the
        job in a terminal state. step_every > 1 thins the Step events; from_start replays the
        job's history after the snapshot (what `raptrctl logs` prints); follow=False ends once
        that is sent."""
        request = job_pb2.WatchJobRequest(job_id=job_id, step_every=step_every,
                                          from_start=from_start, no_follow=not follow)
        try:
            for e in self._stub.WatchJob(request, metadata=self._metadata):
                event = _event(e)
                if event is not None:
                    yield event
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, "WatchJob") from None

    def wait(self, job_id: str) -> Job:
        """Blocks until the job ends and returns it."""
        for _ in self.watch(job_id, step_every=1000000):
            pass
        return self.get(job_id)

    def steps(self, job_id: str, from_step: int = 0) -> List[dict]:
        """The job's stored step summaries from `from_step` on, one dict per step: step (0-based),
        stage, path_length, loss, learning_rate, tokens, flops, flops_full, step_seconds and
        eval_loss (None where no evaluation followed)."""
        rows = []
        request = job_pb2.ListJobStepsRequest(job_id=job_id, from_step=from_step,
                                              page_size=10000)
        while True:
            page = self._call("ListJobSteps", request)
            for s in page.steps:
                row = dataclasses.asdict(_step(None, s))
                del row["time"]
                rows.append(row)
            if page.next_from_step < 0:
                return rows
            request.from_step = page.next_from_step
