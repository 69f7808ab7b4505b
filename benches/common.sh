# Shell helpers shared by the benchmark scripts (source it).

# need_pkg CHECK PACKAGE: installs Debian's PACKAGE (apt-get) unless the
# shell command CHECK succeeds.
need_pkg() {
    if ! eval "$1" >/dev/null 2>&1; then
        echo "installing $2" >&2
        apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y "$2" >/dev/null; }
    fi
}
