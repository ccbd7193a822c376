"""Small vision-language models (PaliGemma, LLaVA, Idefics3/SmolVLM) for yes/no chest X-ray VQA.

Every model here is a real Hugging Face class built from a small config (nothing downloaded) or
loaded from a local checkpoint; :mod:`.adapters` hides the three classes' differences behind one
interface, :mod:`.answer` turns first-answer-token logits into yes/no scores, :mod:`.train` does
the adult pretraining and the language-model-only LoRA tune, :mod:`.explain` gives Grad-CAM and
attention-rollout maps and :mod:`.package` writes and verifies a model package. Imports no Dagster.
"""
