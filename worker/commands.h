// Entry points of raptr-worker's subcommands; each returns the process exit code.
#pragma once

namespace raptr {

int RunLocalTrain(int argc, char** argv);  // argv[1] == "train"
int RunDebugStep(int argc, char** argv);   // argv[1] == "debug-step"
int RunServe(int argc, char** argv);       // argv[1] == "serve"

}  // namespace raptr
