// `raptrctl data ...`: local data helpers (corpus preparation).
#pragma once

namespace raptr::cli {

// `raptrctl data prepare --input DIR[,DIR...] --out DIR [--vocab-size N] [--val-fraction F]
// [--seed S]`. argv[first..] are the arguments after the command words. Returns the process exit
// code: 0 on success, 1 on failure (message on stderr), 2 on a usage error.
int RunDataPrepare(int argc, char** argv, int first);

}  // namespace raptr::cli
