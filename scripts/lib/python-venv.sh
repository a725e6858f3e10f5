# Sourced by scripts that run a Python tool from a pinned requirements file.
#
#   python_venv PYTHON VENV REQUIREMENTS MIN_MINOR WHAT [exact]
#
# Checks that PYTHON (3.MIN_MINOR or newer, with venv) exists, then makes
# VENV from REQUIREMENTS (wheels only), rebuilt only when that file or the
# interpreter changes; one installer at a time (flock on VENV.lock). With
# "exact", dependencies are not resolved: the file must pin the whole set,
# which `pip check` verifies. WHAT names the tool in error messages.
# Needs say/die from the caller.

python_venv() {
  local python=$1 venv=$2 requirements=$3 min_minor=$4 what=$5 exact=${6:-}
  command -v "$python" >/dev/null ||
    die "$python is not installed: $what needs Python >= 3.$min_minor with venv" \
      "(Debian: apt-get install python3 python3-venv)"
  "$python" -c "import sys; sys.exit(sys.version_info < (3, $min_minor))" ||
    die "$("$python" --version 2>&1) is too old: $what needs Python >= 3.$min_minor (PYTHON=python3.x ...)"
  "$python" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$python has no working venv module (Debian: apt-get install python3-venv)"

  mkdir -p "$(dirname "$venv")"
  local stamp
  stamp=$( {
    cat "$requirements"
    "$python" -c 'import sys; print(sys.version, sys.executable)'
  } | sha256sum | cut -d' ' -f1)
  (
    if command -v flock >/dev/null; then flock 9; fi
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$stamp" ] && "$venv/bin/python" -c '' 2>/dev/null; then
      exit 0
    fi
    say "creating $venv from $requirements"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
    # Wheels only: a missing wheel fails now instead of compiling for half an hour.
    local deps=()
    if [ "$exact" = exact ]; then deps=(--no-deps); fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      --only-binary=:all: "${deps[@]}" -r "$requirements" ||
      die "pip could not install $requirements (needs PyPI, or a pip index/find-links with those wheels)"
    if [ "$exact" = exact ]; then
      local problems
      if ! problems=$("$venv/bin/python" -m pip check --disable-pip-version-check 2>&1); then
        printf '%s\n' "$problems" >&2
        die "$requirements is not a complete, consistent set for $("$python" --version 2>&1) (pip check, above)"
      fi
    fi
    # Written last: an interrupted install is redone next time.
    echo "$stamp" >"$venv/.requirements.sha256"
  ) 9>"$venv.lock"
}
