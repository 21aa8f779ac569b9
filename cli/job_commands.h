// `raptrctl submit|list|get|cancel|watch`: JobService calls on a coordinator.
#pragma once

namespace raptr::cli {

// Each takes the arguments after its command words (argv[first..]) and returns the exit code:
// 0 ok; 1 the coordinator returned an error (printed with its gRPC code); 2 a usage error or a
// job file that does not parse; 3 the coordinator is unreachable. Common flags:
// --coordinator HOST:PORT (default $RAPTR_COORDINATOR, else 127.0.0.1:50051), --output
// table|json, --timeout SECONDS (each RPC's deadline, default 10).

// `raptrctl submit -f job.yaml [--request-id ID] [--validate-only]`: prints the new job's id
// (table) or the Job (json).
int RunSubmit(int argc, char** argv, int first);
// `raptrctl list [--state pending,running,...]`: every job, oldest first.
int RunList(int argc, char** argv, int first);
// `raptrctl get JOB`: one job.
int RunGet(int argc, char** argv, int first);
// `raptrctl cancel JOB [--reason TEXT]`: cancels a job and prints it.
int RunCancel(int argc, char** argv, int first);
// `raptrctl watch JOB [--step-every N]`: prints the job's events, one a line, until it reaches
// a terminal state (no deadline: the stream lasts as long as the job).
int RunWatch(int argc, char** argv, int first);
// plot JOB... -o FILE.svg: training and eval loss against step and against FLOPs.
int RunPlot(int argc, char** argv, int first);
// `raptrctl export JOB | --checkpoint DIR --format hf -o DIR`.
int RunExport(int argc, char** argv, int first);
// `raptrctl top [--interval S] [--once]`: a live view of the workers and the active jobs.
int RunTop(int argc, char** argv, int first);
// `raptrctl delete JOB`: an ended job, its history and its checkpoints.
int RunDelete(int argc, char** argv, int first);
// `raptrctl retry JOB [--reason TEXT]`: a FAILED job again from its last committed checkpoint.
int RunRetry(int argc, char** argv, int first);
// `raptrctl logs JOB [-f] [--step-every N]`: the job's event log from its submission.
int RunLogs(int argc, char** argv, int first);

}  // namespace raptr::cli
