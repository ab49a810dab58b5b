# labeval service against an external PostgreSQL: docker run -e LABEVAL_DATABASE_URL=postgresql://… -p 8000:8000
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LABEVAL_HOST=0.0.0.0 LABEVAL_PORT=8000
WORKDIR /app
COPY pyproject.toml README.md ./
COPY labeval ./labeval
COPY scoring ./scoring
COPY migrations ./migrations
# Editable install keeps migrations/ beside the package, where the migration runner looks.
RUN pip install -e . && useradd --create-home --uid 10001 labeval && chown -R labeval /app
USER labeval
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
CMD ["labeval", "serve"]
