# The LUKHAS Context image: `lukhas` as the entrypoint (a worker, the CLI, topic creation).
# Two stages: the builder compiles the Cython fold and change decoder into a virtualenv; the
# runtime stage copies that virtualenv onto a base with Python only (no compiler), and runs
# as the non-root user `lukhas`. BASE: a Debian bookworm image (Python 3.11, as CI); where no
# image registry can be reached, `make compose-build` makes one with debootstrap.
ARG BASE=lukhas/debian:bookworm

FROM ${BASE} AS builder
# docker/certs/*.crt: extra CAs for pip behind an inspecting proxy (see docker/certs/README.md).
COPY docker/certs/ /tmp/certs/
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && (cp /tmp/certs/*.crt /usr/local/share/ca-certificates/ 2>/dev/null || true) \
 && update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/lukhas
WORKDIR /src
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY lukhas_context/ lukhas_context/
COPY schemas/ schemas/
COPY streams/ streams/
COPY state/ state/
COPY processors/ processors/
COPY ops/ ops/
RUN /opt/lukhas/bin/pip install -q --no-cache-dir --upgrade pip \
 && /opt/lukhas/bin/pip install -q --no-cache-dir ".[server]" -c constraints.txt \
 && cd / && /opt/lukhas/bin/python -c "import lukhas_context.processors._fastfold, lukhas_context.schemas._fastchange, lukhas_context.schemas._fastjson, lukhas_context.streams._fastrecords"

FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 1001 --user-group --home-dir /var/lib/lukhas lukhas \
 && mkdir -p /var/lib/lukhas/state \
 && chown -R lukhas:lukhas /var/lib/lukhas
COPY --from=builder /opt/lukhas /opt/lukhas
ENV PATH=/opt/lukhas/bin:$PATH PYTHONUNBUFFERED=1
USER lukhas
WORKDIR /var/lib/lukhas
VOLUME /var/lib/lukhas/state
ENTRYPOINT ["lukhas"]
CMD ["--help"]
