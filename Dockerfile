# Hugging Face Space (sdk: docker, app_port: 8501). Build: docker build -t peftcompare .
# Run: docker run -p 8501:8501 -v peftcompare-data:/data peftcompare
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/tmp/hf-home \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app

# the CPU wheel first: a bare "torch" requirement would pull several GB of CUDA packages; then the exact
# pins of the lock (the versions the test suite passed on), so a rebuild never drifts to untested releases
COPY requirements-torch.txt requirements.lock ./
RUN pip install -r requirements-torch.txt --index-url https://download.pytorch.org/whl/cpu
RUN pip install -r requirements.lock

COPY . .

# Spaces run the container as uid 1000; /data is the persistent volume when one is attached.
# The store lives in $PEFTCOMPARE_HOME: /data/peftcompare if /data is writable, else /tmp/peftcompare.
RUN useradd -m -u 1000 user && chown -R user /app
USER user
ENV PEFTCOMPARE_HOME=/data/peftcompare

EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"

CMD ["sh", "-c", "mkdir -p \"$PEFTCOMPARE_HOME\" 2>/dev/null && [ -w \"$PEFTCOMPARE_HOME\" ] || export PEFTCOMPARE_HOME=/tmp/peftcompare; exec streamlit run app.py --server.port 8501 --server.address 0.0.0.0"]
