# bash completion for via(1): commands, each command's flags and the overlay names of the
# configuration (for -n/--network), all asked from `via __complete` (the flags come from each
# command's --help, the overlays from the configuration -c names or the usual search), so that
# nothing here has to follow changes to via. Installed as
# /usr/share/bash-completion/completions/via; needs no bash-completion helper functions.

_via() {
  local via=${COMP_WORDS[0]}
  # The line up to the cursor, split on white space only: an overlay id contains ':', which
  # is in COMP_WORDBREAKS.
  local line=${COMP_LINE:0:COMP_POINT}
  local -a words
  read -ra words <<<"$line"
  local cur=""
  [[ $line == *[[:space:]] ]] || { cur=${words[-1]}; unset 'words[-1]'; }
  local prev=${words[-1]}
  local cmd="" i n=${#words[@]} config=() dashdash=-1
  for ((i = 1; i < n; i++)); do
    case ${words[i]} in
      --)
        if [[ -n $cmd ]]; then dashdash=$i; break; fi ;;
      -c | --config)
        ((i + 1 < n)) && config=(-c "${words[i + 1]/#\~/$HOME}")
        ((i++)) ;;
      -n | --network | --socket | --log | --idle-timeout | --url | --timeout | --cafile)
        ((i++)) ;;
      -*) ;;
      *)
        if [[ -z $cmd ]]; then
          cmd=${words[i]}
        elif [[ $cmd == run || $cmd == check ]]; then
          dashdash=$((i - 1)); break  # the COMMAND without a --
        fi ;;
    esac
  done
  COMPREPLY=()
  if ((dashdash >= 0)); then
    # After `--`: the command to run, then its own arguments (files).
    if ((n - 1 == dashdash)); then
      mapfile -t COMPREPLY < <(compgen -c -- "$cur")
    else
      compopt -o default 2>/dev/null
    fi
    return 0
  fi
  if [[ -z $cmd ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$("$via" __complete commands 2>/dev/null) --help --version" -- "$cur")
    return 0
  fi
  case $prev in
    -n | --network)
      local ids
      ids=$("$via" __complete networks "${config[@]}" 2>/dev/null)
      mapfile -t COMPREPLY < <(compgen -W "$ids" -- "$cur")
      # bash replaces only the part of the word after its last ':'.
      if [[ $cur == *:* && $COMP_WORDBREAKS == *:* ]]; then
        local strip=${cur%"${cur##*:}"}
        COMPREPLY=("${COMPREPLY[@]#"$strip"}")
      fi
      return 0 ;;
    -c | --config | --socket | --log | --cafile)
      compopt -o default 2>/dev/null
      return 0 ;;
    --url | --timeout | --idle-timeout)
      return 0 ;;
  esac
  if [[ $cur == -* || $cmd == install || $cmd == status || $cmd == stop || $cmd == reload ||
        $cmd == broker || $cmd == probe ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$("$via" __complete flags "$cmd" 2>/dev/null)" -- "$cur")
  elif [[ $cmd == help ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$("$via" __complete commands 2>/dev/null)" -- "$cur")
  elif [[ $cmd == run || $cmd == check ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$("$via" __complete flags "$cmd" 2>/dev/null) --" -- "$cur")
    [[ -n $cur ]] && mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen -c -- "$cur")
  fi
  return 0
}
complete -F _via via
