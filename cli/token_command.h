// `raptrctl token new`: makes a client or worker token for a coordinator's token file.
#pragma once

namespace raptr::cli {

// `raptrctl token new --name NAME --role ROLE --out FILE`: writes a fresh token to FILE (mode
// 0600, never over an existing file) and prints the line to add to the coordinator's
// --auth-tokens file (`NAME ROLE sha256:<hex>`; the token itself is not printed). Returns 0, 1
// (FILE could not be written) or 2 (usage).
int RunTokenNew(int argc, char** argv, int first);

}  // namespace raptr::cli
