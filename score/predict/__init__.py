"""Prediction with a trained SCORE model: single images, and scenes far larger than the model's input.

Not imported by ``import score`` (training and evaluation do not need it, nor
rasterio): ``from score.predict.predictor import SCOREPredictor``.
"""
