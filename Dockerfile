# One image for every service of docker-compose.yml: the worker, Flower and the web tier.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md* ./
COPY streaming ./streaming
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir ".[worker,web]"
# The reference web app and its page (not part of the installed package).
COPY examples ./examples

# Celery refuses nothing as root, but no service has a reason to be root.
RUN useradd --create-home --uid 1000 app
USER app

CMD ["celery", "-A", "worker", "worker", "-P", "prefork", "-l", "info"]
