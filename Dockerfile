# labeval service. With LABEVAL_DATABASE_URL it uses that PostgreSQL; without it, an embedded
# server in /var/lib/labeval (mount a volume there to keep the data):
#   docker build -t labeval . && docker run -e LABEVAL_DATABASE_URL=postgresql://… -p 8000:8000 labeval

# --- build: the wheel, from the same files a source checkout has -------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY labeval ./labeval
COPY scoring ./scoring
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /dist .

# --- run: a normal (not editable) install of the wheel, as an unprivileged user ----------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LABEVAL_HOST=0.0.0.0 LABEVAL_PORT=8000 LABEVAL_DATA_DIR=/var/lib/labeval
COPY --from=build /dist /dist
RUN pip install /dist/*.whl && rm -rf /dist \
    && useradd --system --create-home --uid 10001 labeval \
    && install -d -o labeval -g labeval /var/lib/labeval
USER labeval
WORKDIR /home/labeval
VOLUME /var/lib/labeval
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
CMD ["labeval", "serve"]
