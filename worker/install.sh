#!/usr/bin/env bash
# Installs TRELLIS.2 and the kiln worker into one Python environment, on Ubuntu 22.04 with
# the CUDA 12.4 toolkit and an NVIDIA driver already there (worker/README.md, steps 1–2).
# It stops at the first step that fails and says which; run it again after fixing it
# (steps already done are quick: pip skips what is installed, clones are reused).
#
# What it does differently from TRELLIS.2's own setup.sh, and why (its users' reports):
# - transformers is pinned to >=4.56,<5: setup.sh installs the newest, and version 5
#   removed what TRELLIS.2's DINOv3 feature extractor reads (4.56 is the first with DINOv3);
# - flash-attn 2.7.3 is built with --no-build-isolation, after psutil, ninja and packaging:
#   under build isolation its setup cannot see torch and fails;
# - no pillow-simd: setup.sh builds it over Pillow and it can lose WebP support, which the
#   GLB's textures need; Pillow's WebP is checked, and Pillow reinstalled when it lacks it;
# - CUDA_HOME is written where later shells and the service read it (the venv's activate
#   script and $KILN_PREFIX/worker.env), not only exported in this one;
# - every extension is imported at the end (a build that "succeeded" but does not load is
#   found here, not by the first job), then the worker's own start-up check runs.
#
# Settings (environment variables):
#   KILN_PREFIX           where everything goes (default /opt/kiln): venv/, TRELLIS.2/,
#                         extensions/, worker.env
#   CUDA_HOME             the CUDA 12.4 toolkit (default /usr/local/cuda-12.4)
#   PYTHON                the Python to make the venv with (default python3.10)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default 8.9: RTX 4090)
#   MAX_JOBS              parallel compile jobs (default 4; flash-attn needs ~4 GB each)
#   TRELLIS_REF           TRELLIS.2 commit (default the one this worker was checked against)
set -Eeuo pipefail

prefix=${KILN_PREFIX:-/opt/kiln}
cuda_home=${CUDA_HOME:-/usr/local/cuda-12.4}
python=${PYTHON:-python3.10}
venv=$prefix/venv
trellis=$prefix/TRELLIS.2
extensions=$prefix/extensions
trellis_ref=${TRELLIS_REF:-5565d240c4a494caaf9ece7a554542b76ffa36d3}
worker_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.9}
export MAX_JOBS=${MAX_JOBS:-4}

step_name="starting"
step() {
    step_name=$1
    echo "==> $step_name"
}
trap 'echo "install.sh: FAILED at step \"$step_name\"; fix that and run it again" >&2' ERR

# pip in the worker's venv; every step uses the same environment.
pip() { "$venv/bin/python" -m pip "$@"; }

# Clones $1 into $2, or reuses the clone; at ref $3 (a branch, a tag or a commit) when
# given, else at the default branch as TRELLIS.2's setup.sh takes it.
clone() {
    local url=$1 dest=$2 ref=${3:-}
    if [ ! -d "$dest/.git" ]; then
        git clone --recursive "$url" "$dest"
    fi
    if [ -n "$ref" ]; then
        git -C "$dest" checkout --quiet "$ref"
        git -C "$dest" submodule update --init --recursive --quiet
    fi
}

step "checking the CUDA 12.4 toolkit in $cuda_home"
if [ ! -x "$cuda_home/bin/nvcc" ]; then
    echo "install.sh: no nvcc in $cuda_home/bin: install cuda-toolkit-12-4 (README.md step 1) or set CUDA_HOME" >&2
    false
fi
# Not `nvcc --version | grep -q`: under pipefail, grep leaving early can fail nvcc.
if ! grep -q "release 12.4" <<<"$("$cuda_home/bin/nvcc" --version)"; then
    echo "install.sh: $cuda_home/bin/nvcc is not CUDA 12.4; torch 2.6 (cu124) and the extensions must agree" >&2
    false
fi
export CUDA_HOME=$cuda_home
export PATH=$cuda_home/bin:$PATH
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    echo "install.sh: warning: nvidia-smi does not work; the build goes on, but the worker needs the driver" >&2
fi

step "creating the Python environment $venv"
mkdir -p "$prefix" "$extensions"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'
pip install --upgrade pip setuptools wheel

step "installing PyTorch 2.6.0 for CUDA 12.4"
pip install torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124

# einops, kornia and timm: the background removers' own model code (BiRefNet, RMBG-2.0,
# loaded with trust_remote_code) imports them.
step "installing TRELLIS.2's Python dependencies (transformers>=4.56,<5)"
pip install imageio imageio-ffmpeg tqdm easydict opencv-python-headless ninja trimesh \
    "transformers>=4.56,<5" zstandard kornia timm lpips pandas psutil packaging einops
pip install "git+https://github.com/EasternJournalist/utils3d.git@9a4eb15e4021b67b12c460c7057d642626897ec8"

step "checking that Pillow writes WebP (the GLB's textures)"
webp_check='from PIL import features; import sys; sys.exit(0 if features.check("webp") else 1)'
if ! "$venv/bin/python" -c "$webp_check"; then
    echo "Pillow has no WebP support: reinstalling Pillow from its wheel"
    pip uninstall -y pillow-simd pillow
    pip install --no-cache-dir "pillow>=10,<13"
    "$venv/bin/python" -c "$webp_check"
fi

step "building flash-attn 2.7.3 (no build isolation; takes a while)"
pip install psutil ninja packaging
pip install flash-attn==2.7.3 --no-build-isolation

step "fetching TRELLIS.2 at $trellis_ref"
clone https://github.com/microsoft/TRELLIS.2.git "$trellis" "$trellis_ref"

step "building nvdiffrast 0.4.0"
clone https://github.com/NVlabs/nvdiffrast.git "$extensions/nvdiffrast" v0.4.0
pip install "$extensions/nvdiffrast" --no-build-isolation

step "building nvdiffrec's renderer (renderutils branch)"
clone https://github.com/JeffreyXiang/nvdiffrec.git "$extensions/nvdiffrec" renderutils
pip install "$extensions/nvdiffrec" --no-build-isolation

step "building CuMesh"
clone https://github.com/JeffreyXiang/CuMesh.git "$extensions/CuMesh"
pip install "$extensions/CuMesh" --no-build-isolation

step "building FlexGEMM"
clone https://github.com/JeffreyXiang/FlexGEMM.git "$extensions/FlexGEMM"
pip install "$extensions/FlexGEMM" --no-build-isolation

step "building o-voxel (from the TRELLIS.2 checkout)"
pip install "$trellis/o-voxel" --no-build-isolation

step "installing the kiln worker"
pip install -e "${worker_dir}[gpu]"

step "making CUDA_HOME and PYTHONPATH last ($venv/bin/activate, $prefix/worker.env)"
# The service reads worker.env (systemd EnvironmentFile=); a shell gets the same from
# the venv's activate script. Both are rewritten on every run, not appended to, so a run
# with another CUDA_HOME or prefix leaves no stale values.
cat >"$prefix/worker.env" <<EOF
CUDA_HOME=$cuda_home
PYTHONPATH=$trellis
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
EOF
activate=$venv/bin/activate
marker="# kiln worker environment (install.sh)"
block=$(printf '%s\n' "$marker" \
    "export CUDA_HOME=$cuda_home" \
    "export PATH=$cuda_home/bin:\$PATH" \
    "export PYTHONPATH=$trellis\${PYTHONPATH:+:\$PYTHONPATH}" \
    "# end of the kiln worker environment")
# Drop the block an earlier run added (from the marker to its end line; one from before
# the end line existed runs to the end of the file, where it was added), then add this one.
sed -i "/^$marker\$/,/^# end of the kiln worker environment\$/d" "$activate"
printf '%s\n' "$block" >>"$activate"

step "importing every extension"
export PYTHONPATH=$trellis${PYTHONPATH:+:$PYTHONPATH}
for module in torch flash_attn nvdiffrast.torch nvdiffrec_render cumesh flex_gemm o_voxel \
    utils3d transformers trellis2.pipelines trellis2.renderers; do
    if ! "$venv/bin/python" -c "import $module"; then
        echo "install.sh: \`import $module\` fails in $venv (the error is above)" >&2
        false
    fi
done

# trellis2's packages load their submodules lazily: import what the worker will use, so
# that DINOv3, the sparse convolution backend and CuMesh's bindings are reached now.
step "importing TRELLIS.2's pipeline and renderers"
"$venv/bin/python" -c 'from trellis2.pipelines import Trellis2ImageTo3DPipeline; from trellis2.renderers import EnvMap, MeshRenderer'

step "running the worker's own start-up check"
"$venv/bin/python" -c 'from kiln_worker.pipelines.trellis2 import check_modules; check_modules()'

step_name="done"
echo "install.sh: TRELLIS.2 and the kiln worker are installed in $venv."
echo "Next: the weights (worker/README.md, step 4), then: . $venv/bin/activate && python -m kiln_worker"
