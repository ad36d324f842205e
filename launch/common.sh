# shellcheck shell=bash
# Helpers shared by the bash launchers in this directory; source it, do not run it.
# The including script sets PROG (its name for messages) and `dry_run` (0 or 1).

# Print the including script's header comment (line 2 up to `set -euo pipefail`) without "# ".
usage() {
  sed -n '2,/^set -euo pipefail/{/^set /d; s/^# \{0,1\}//; p}' "$0"
}

die() {
  echo "$PROG: error: $*" >&2
  echo "Run '$0 --help' for usage." >&2
  exit 2
}

# Quote one word for a POSIX shell; words made only of safe characters stay as they are.
# In --opt=value and KEY=value only the value is quoted, so that the line stays readable and
# an environment assignment stays an assignment.
quote() {
  local s=$1
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ "$s" =~ ^(--?[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    squote "$s"
  fi
}

# Always single-quote (a ' inside becomes '\'').
squote() {
  printf "'%s'" "${1//\'/\'\\\'\'}"
}

# Quote all arguments and join them with spaces.
quote_all() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote "$w")"
  done
  printf '%s' "$out"
}

# Run a command, or with --dry_run only print it as one shell-quoted line on stdout.
run() {
  if [[ ${dry_run:-0} == 1 ]]; then
    printf '%s\n' "$(quote_all "$@")"
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# check_int OPTION VALUE: VALUE must be a positive integer.
check_int() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer (got '$2')"
}

# check_env_assignment VALUE: VALUE must look like KEY=VALUE.
check_env_assignment() {
  [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE (got '$1')"
}
