"""Evaluation: the paper's test protocols, prediction, and what they report.

  protocols  single-scale, dense, multi-crop, multi-scale and fusion evaluation (Sec. 3.2,
             Tables 3-6) and prediction on image files
  views      the test views of an image (dense, crops, flips) and the Predictor that
             runs them in shape buckets with exact masks (no TensorFlow)
  report     confusion matrix, per-class table, the most confident errors
  explain    Grad-CAM, saliency and SmoothGrad, and their overlays
"""
