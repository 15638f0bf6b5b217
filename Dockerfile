# The image every Ray pod (RayJob, RayService, RayCluster from `vljepa submit --k8s`,
# `vljepa deploy --k8s` and helm/vljepa) and the chart's MLflow server run: Ray 2.60 plus this
# package with all of its dependencies baked in, so no pod pip-installs anything at start-up
# (slow runtime_env installs are how KubeRay jobs end up stuck in Initializing).
#
#   CPU: docker build -t vljepa:0.1.0 .
#   GPU: docker build --build-arg VARIANT=-gpu -t vljepa:0.1.0-gpu .
#
# Keep RAY_VERSION equal to cluster/submit_config.py RAY_VERSION and helm values rayVersion
# (tests/cluster/test_kuberay.py checks it).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# "" for CPU, "-gpu" for the CUDA base image
ARG VARIANT=
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}

ARG RAY_VERSION
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Empty: CPU wheels for the CPU image (PyPI's default torch is the multi-GB CUDA build),
# CUDA 12.8 wheels for the -gpu image.
ARG TORCH_INDEX_URL=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /home/ray/vljepa

# Dependencies first: this layer is rebuilt only when pyproject.toml changes, not with the code.
COPY --chown=ray:users pyproject.toml ./
RUN set -eux; \
    if [ -n "${TORCH_INDEX_URL}" ]; then index="${TORCH_INDEX_URL}"; \
    elif [ -z "${VARIANT}" ]; then index=https://download.pytorch.org/whl/cpu; \
    else index=https://download.pytorch.org/whl/cu128; fi; \
    pip install --index-url "${index}" "torch==${TORCH_VERSION}"; \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt "psycopg2-binary>=2.9"; \
    rm /tmp/requirements.txt

# The package itself (no dependency resolution: everything is already here).
COPY --chown=ray:users . ./
RUN set -eux; \
    pip install --no-deps .; \
    python -c "import jepa, pipelines, serve, cluster, ray, torch, decord, mlflow, transformers; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"; \
    vljepa --help > /dev/null

# KubeRay sets the Ray containers' command; the chart sets MLflow's. A bare `docker run` gets the CLI.
CMD ["vljepa", "--help"]
