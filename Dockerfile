FROM python:3.11-slim-bookworm
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV STATIC_ROOT=/app/staticfiles
RUN DATA_DIR=/tmp/build python manage.py collectstatic --noinput
EXPOSE 8000
