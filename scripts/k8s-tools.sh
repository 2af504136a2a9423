#!/usr/bin/env bash
# Build, or reuse, the programs of the local control plane and print the folder that holds them.
#
# Every program is built from its Go module at the version pinned in tools/k8s/<name>/go.mod, with
# the machine's Go toolchain, at low CPU priority. The folder is
# ${EDGEADAPT_BIN_CACHE:-~/.cache/edgeadapt/bin}/<hash of the go.mod/go.sum files and Go version>,
# so a version change builds afresh and an unchanged one is reused. Missing programs are rebuilt.
# Usage: scripts/k8s-tools.sh [program ...]   (default: the control plane's; the real node adds
#        kubelet kube-proxy coredns pause)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/tools/k8s"
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [ ! -x "$GO" ] && ! command -v "$GO" >/dev/null; then
    echo "k8s-tools: no Go toolchain (set GO=/path/to/go)" >&2
    exit 1
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

key=$(cd "$tools" && { cat ./*/go.mod ./*/go.sum ./*/cmd/*/*.go "$root/scripts/k8s-tools.sh"; "$GO" version; } | sha256sum | cut -c1-16)
bin="${EDGEADAPT_BIN_CACHE:-$HOME/.cache/edgeadapt/bin}/$key"
mkdir -p "$bin"

# program -> module folder under tools/k8s
module_of() {
    case "$1" in
        kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
            echo kubernetes ;;
        coredns) echo coredns ;;
        pause) echo pause ;;
        kwok) echo kwok ;;
        helm) echo helm ;;
        etcd) echo etcd ;;
        *) echo "k8s-tools: unknown program $1" >&2; return 1 ;;
    esac
}

# The version string a module pins for one of its requirements.
pinned() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$tools/$1/go.mod"; }

ldflags_of() {
    local mod=$1 v
    case "$mod" in
        kubernetes)
            v=$(pinned kubernetes k8s.io/kubernetes)
            local minor=${v#v1.}; minor=${minor%%.*}
            local p
            for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
                printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
                    "$p" "$v" "$p" "$p" "$minor" "$p"
            done
            ;;
        helm)
            v=$(pinned helm helm.sh/helm/v3)
            printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$v"
            # helm's default Kubernetes version (for `helm template`) is its client-go's.
            local cg; cg=$(pinned helm k8s.io/client-go); cg=${cg#v0.}
            printf -- '-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 '
            printf -- '-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=%s ' "${cg%%.*}"
            ;;
    esac
    printf -- '-s -w'
}

# The pod sandbox's pause program, from the C source in the pinned k8s.io/kubernetes module
# (what registry.k8s.io/pause is built from), linked statically for a FROM-scratch image.
build_pause() {
    local v src
    v=$(pinned kubernetes k8s.io/kubernetes)
    src=$(cd "$tools/kubernetes" && "$GO" mod download -json "k8s.io/kubernetes@$v" | awk -F'"' '$2 == "Dir" { print $4 }')
    gcc -Os -Wall -Werror -static -DVERSION="$v-edgeadapt" -o "$bin/.pause.tmp" "$src/build/pause/linux/pause.c" >&2
    mv -f "$bin/.pause.tmp" "$bin/pause"
}

build_module() {
    local mod=$1 tmp
    if [ "$mod" = pause ]; then build_pause; return; fi
    tmp=$(mktemp -d "$bin/.build-$mod.XXXXXX")
    echo "k8s-tools: building $mod into $bin (this takes minutes the first time)" >&2
    local start=$SECONDS
    (cd "$tools/$mod" && nice -n 15 "$GO" build -trimpath -ldflags "$(ldflags_of "$mod")" -o "$tmp/" tool) >&2
    local f
    for f in "$tmp"/*; do mv -f "$f" "$bin/"; done
    rmdir "$tmp"
    echo "k8s-tools: built $mod in $((SECONDS - start)) s" >&2
}

programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
# The real node's programs: scripts/k8s-tools.sh kubelet kube-proxy coredns pause

# One build at a time per folder: a second caller waits and then finds the programs.
exec 9>"$bin/.lock"
flock 9
declare -A done_mod=()
for p in "${programs[@]}"; do
    m=$(module_of "$p")
    if [ ! -x "$bin/$p" ] && [ -z "${done_mod[$m]:-}" ]; then
        build_module "$m"
        done_mod[$m]=1
    fi
done
echo "$bin"
