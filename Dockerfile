# syntax=docker/dockerfile:1
# switchyard: slim, non-root; policies are mounted read-only, secrets come from the environment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    SWITCHYARD_HOST=0.0.0.0 \
    SWITCHYARD_PORT=8080 \
    SWITCHYARD_POLICIES=/etc/switchyard/policies
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home switchyard \
 && mkdir -p /etc/switchyard/policies
USER 10001
EXPOSE 8080
# Mount: -v "$PWD/policies:/etc/switchyard/policies:ro"
VOLUME ["/etc/switchyard/policies"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SWITCHYARD_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["switchyard"]
CMD ["serve"]
