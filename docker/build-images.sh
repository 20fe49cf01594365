#!/usr/bin/env bash
# Build every Multipass image from the repository root (docker/Dockerfile), tagged as k8s/base pins them.
#   docker/build-images.sh                 # multipass-gateway:0.1.0, ...
#   REGISTRY=registry.example.org/multipass docker/build-images.sh --push
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
prefix="${REGISTRY:+$REGISTRY/}"
push="${1:-}"

# build TARGET SERVICE TORCH IMAGE: the Dockerfile's target, the service folder, which torch, the tag.
build() {
  local target="$1" service="$2" torch="$3" image="${prefix}$4"
  docker build --file docker/Dockerfile --target "$target" \
    --build-arg SERVICE="$service" --build-arg TORCH="$torch" --tag "$image" .
  if [[ "$push" == "--push" ]]; then docker push "$image"; fi
}

build gateway gateway none "multipass-gateway:${version}"
build prompt-parser prompt_parser none "multipass-prompt-parser:${version}"
build http-api http_api none "multipass-http-api:${version}"
build segmentation segmentation cpu "multipass-segmentation:${version}"
build diffusion diffusion cpu "multipass-diffusion:${version}-cpu"
build diffusion-cuda diffusion cuda "multipass-diffusion:${version}-cuda"
