# headserve with its export extras, for deploy/exporter/exporter.yaml: writes the model repository and
# loads new heads on every Triton replica. Build from a wheel of this checkout:
#
#   python -m pip wheel --no-deps -w deploy/container/dist .
#   docker build -f deploy/container/exporter.Dockerfile -t REGISTRY/headserve-exporter:0.1.0 deploy/container
#   docker push REGISTRY/headserve-exporter:0.1.0
FROM python:3.12-slim

COPY dist/headserve-0.1.0-py3-none-any.whl /tmp/
RUN python -m pip install --no-cache-dir "/tmp/headserve-0.1.0-py3-none-any.whl[full]" \
    && rm /tmp/headserve-0.1.0-py3-none-any.whl \
    && headserve --help > /dev/null
USER 1001:1000
