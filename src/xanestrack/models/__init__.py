"""Learned models (PyTorch, imported lazily): the Cycle-GAN detector and the Dual U-Net segmenter.

Each model is a folder beside this file (config.json, weights.pt, card.md) written by
``xanestrack train ...``.
"""

__all__ = ["pipeline_models"]


def pipeline_models(
    detector: str, segmenter: str, *, options, detector_model=None, segmenter_model=None, device: str = "cpu"
):
    """The ``detector`` and ``segmenter`` callables for :func:`xanestrack.pipeline.run_pipeline`.

    ``detector`` / ``segmenter``: "learned" (the shipped model, or the folder given)
    or "classical" (None: the pipeline's own classical path). ``options``: the
    PipelineOptions (the detector's size tests and binning follow ``options.detect``).
    ``device``: where the learned models run ("cpu", "cuda", "cuda:N").
    """
    for name, value in (("detector", detector), ("segmenter", segmenter)):
        if value not in ("classical", "learned"):
            raise ValueError(f"{name} must be 'classical' or 'learned', got {value!r}")
    det_fn = seg_fn = None
    if detector == "learned":
        from .detector import LearnedDetector

        det_fn = LearnedDetector(detector_model, options=options.detect, device=device)
    if segmenter == "learned":
        from .segmenter import LearnedSegmenter

        seg_fn = LearnedSegmenter(segmenter_model, device=device).segment_rois
    return det_fn, seg_fn
