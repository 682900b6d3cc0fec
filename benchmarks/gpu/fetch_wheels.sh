#!/usr/bin/env bash
# Download the wheels the GPU scripts need on the GPU machine into .gpu-wheels/ (about 54 MiB; the device
# tool carries 64 MiB with the working tree). Its image has torch, transformers, peft, accelerate, pillow,
# safetensors and huggingface-hub, but not these. Python 3.12 on x86-64 there.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu-wheels \
  diffusers==0.42.1 importlib_metadata==10.2.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 python-dotenv==1.2.4 platformdirs==4.14.9 \
  bitsandbytes==0.50.2 torchao==0.18.0 nvidia-ml-py==13.615.71
du -sh .gpu-wheels
