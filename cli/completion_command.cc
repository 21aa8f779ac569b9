// `raptrctl completion bash` (see completion_command.h).
#include "cli/completion_command.h"

#include <cstdio>
#include <cstring>

namespace raptr::cli {
namespace {

// The script asks the binary itself: commands are the two-space-indented words of `raptrctl
// --help`, flags the "--name" (and "--[no-]name": both spellings) of `raptrctl CMD --help`.
constexpr char kBash[] = R"bash(# bash completion for raptrctl (raptrctl completion bash)
_raptrctl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prog=${COMP_WORDS[0]} i cmd=() words
  for ((i = 1; i < COMP_CWORD; i++)); do
    [[ ${COMP_WORDS[i]} == -* ]] && break
    cmd+=("${COMP_WORDS[i]}")
  done
  local commands
  commands=$("$prog" --help 2>/dev/null | sed -n 's/^  \([a-z][a-z ]*[a-z]\)  .*/\1/p' | sed 's/ *$//')
  if [[ ${#cmd[@]} -eq 0 || ( ${#cmd[@]} -eq 1 && $cur != -* && -z $(grep -x "${cmd[0]}" <<< "$commands") ) ]]; then
    if [[ ${#cmd[@]} -eq 1 ]]; then
      words=$(sed -n "s/^${cmd[0]} \(.*\)/\1/p" <<< "$commands")
    else
      words=$(awk '{print $1}' <<< "$commands" | sort -u)
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    return 0
  fi
  if [[ $cur == -* ]]; then
    words=$("$prog" "${cmd[@]}" --help 2>/dev/null | awk '/^  -/ {
      f = ($1 ~ /^-[a-z],$/) ? $2 : $1
      if (f ~ /^--\[no-\]/) { n = substr(f, 8); print "--" n; print "--no-" n } else print f }')
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    return 0
  fi
  case "${cmd[0]}" in
    get | cancel | watch | plot | export)
      words=$("$prog" list 2>/dev/null | awk 'NR > 1 {print $1}')
      COMPREPLY=($(compgen -W "$words" -- "$cur"))
      return 0 ;;
  esac
  COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _raptrctl raptrctl
)bash";

}  // namespace

int RunCompletion(int argc, char** argv, int first) {
  if (argc - first == 1 && std::strcmp(argv[first], "bash") == 0) {
    std::fputs(kBash, stdout);
    return 0;
  }
  const bool help = argc - first == 1 && (std::strcmp(argv[first], "--help") == 0 ||
                                          std::strcmp(argv[first], "-h") == 0);
  std::fprintf(help ? stdout : stderr,
               "usage: raptrctl completion bash\n"
               "Prints a bash completion script: source <(raptrctl completion bash)\n");
  return help ? 0 : 2;
}

}  // namespace raptr::cli
