# The image each merge runs in with MERGEBOT_BACKEND=hf-jobs: mergebot with CUDA torch.
# The bot starts it as a Hugging Face Job running `python -m bot.cli run-job ...`, with the
# token and the recipe as Job secrets. Built and pushed by .github/workflows/jobs-image.yml.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /opt/mergebot
COPY pyproject.toml README.md ./
COPY merge_engine ./merge_engine
COPY bot ./bot
# torch comes with the base image (CUDA build); pip keeps it since it satisfies torch>=2.4.
RUN python -m pip install --no-cache-dir . \
 && python -c "import torch, bot.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RUN useradd --create-home --uid 1000 merge
USER merge
WORKDIR /home/merge
CMD ["python", "-m", "bot.cli", "run-job", "--help"]
