"""What a test reports: the accuracy and records of test.py (``testing``), the calibration
metrics (``calibration``) and the figures (``plots``)."""
