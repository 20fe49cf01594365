#!/usr/bin/env bash
# Build every Multipass image from the repository root, tagged as k8s/base pins them.
#   docker/build-images.sh                 # multipass-gateway:0.1.0, ...
#   REGISTRY=registry.example.org/multipass docker/build-images.sh --push
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
prefix="${REGISTRY:+$REGISTRY/}"
push="${1:-}"

build() {
  local dockerfile="$1" image="${prefix}$2"
  docker build --file "$dockerfile" --tag "$image" .
  if [[ "$push" == "--push" ]]; then docker push "$image"; fi
}

build services/gateway/Dockerfile "multipass-gateway:${version}"
build services/prompt_parser/Dockerfile "multipass-prompt-parser:${version}"
build services/segmentation/Dockerfile "multipass-segmentation:${version}"
build services/diffusion/Dockerfile "multipass-diffusion:${version}-cpu"
build services/diffusion/Dockerfile.cuda "multipass-diffusion:${version}-cuda"
