# headserve with its export extras, for deploy/exporter/exporter.yaml: writes the model repository and
# loads new heads on every Triton replica. Build from a wheel of this checkout:
#
#   python -m pip wheel --no-deps -w deploy/container/dist .
#   docker build -f deploy/container/exporter.Dockerfile -t REGISTRY/headserve-exporter:0.1.0 deploy/container
#   docker push REGISTRY/headserve-exporter:0.1.0
#
# The same file with EXTRAS=full,ray is the image of the Ray embedding job (deploy/ray/rayjob.yaml): head and
# workers need headserve, and Ray at the version of headserve's pin (KubeRay runs `ray start` from the image):
#   docker build -f deploy/container/exporter.Dockerfile --build-arg EXTRAS=full,ray \
#       -t REGISTRY/headserve-ray:0.1.0 deploy/container
FROM python:3.12-slim
ARG EXTRAS=full

COPY dist/headserve-0.1.0-py3-none-any.whl /tmp/
RUN python -m pip install --no-cache-dir "/tmp/headserve-0.1.0-py3-none-any.whl[${EXTRAS}]" \
    && rm /tmp/headserve-0.1.0-py3-none-any.whl \
    && headserve --help > /dev/null
USER 1001:1000
