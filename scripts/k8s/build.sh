#!/usr/bin/env bash
# Builds the e2e tier's binaries from the pinned Go modules beside this script and prints their folder:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from k8s.io/kubernetes, hollow-node
# (kubemark's hollow kubelet kept on loopback: hollownode/main.go says why) and etcd.
#
# The result is cached outside the clone, keyed by the Kubernetes version and a hash of this script, the
# go.mod/go.sum files and hollownode's source, so any clone on the machine reuses it and a change of pin builds anew:
#   ${QUASAR_K8S_CACHE:-~/.cache/quasar/k8s}/<version>-<hash>/bin
# Builds run at the lowest priority: the machines are small and shared.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${QUASAR_K8S_CACHE:-$HOME/.cache/quasar/k8s}"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
inputs_hash="$(cat "${BASH_SOURCE[0]}" "$here"/go.{mod,sum} "$here"/etcd/go.{mod,sum} "$here"/hollownode/*.go |
    sha256sum | cut -c1-12)"
target="$cache_root/$version-$inputs_hash"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl hollow-node etcd)

if [[ -f "$target/.complete" ]]; then
    echo "$target/bin"
    exit 0
fi

mkdir -p "$cache_root"
# One build at a time per machine: a second caller waits, then finds the finished cache.
exec 9>"$cache_root/.build.lock"
flock 9
if [[ -f "$target/.complete" ]]; then
    echo "$target/bin"
    exit 0
fi

staging="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$staging"' EXIT
started=$SECONDS

# Without these the servers report v0.0.0-master, and clients and kubelets judge version skew from them.
version_vars=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    minor="${version#v1.}"
    version_vars+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
    version_vars+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() { # module folder, output (a file, or a folder ending in /), packages...
    local module="$1" output="$2"
    shift 2
    (cd "$module" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "-s -w $version_vars" \
        -o "$output" "$@") >&2
}
echo "building Kubernetes $version and etcd into $target (several minutes on a cold cache)" >&2
build "$here" "$staging/bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
build "$here" "$staging/bin/hollow-node" ./hollownode
build "$here/etcd" "$staging/bin/etcd" go.etcd.io/etcd/server/v3

for binary in "${binaries[@]}"; do
    [[ -x "$staging/bin/$binary" ]] || { echo "build.sh: $binary was not built" >&2; exit 1; }
done
echo "built in $((SECONDS - started)) s: $(du -sh "$staging/bin" | cut -f1)" >&2
rm -rf "$target"
touch "$staging/.complete"
mv "$staging" "$target"
trap - EXIT
echo "$target/bin"
