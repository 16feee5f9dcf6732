# One image for every service of docker-compose.yml: the worker and Flower (and later the API).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md* ./
COPY streaming ./streaming
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir ".[worker]"

# Celery refuses nothing as root, but a worker has no reason to be root.
RUN useradd --create-home --uid 1000 app
USER app

CMD ["celery", "-A", "worker", "worker", "-P", "prefork", "-l", "info"]
