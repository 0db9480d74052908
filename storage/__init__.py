"""What a run keeps on disk: atomic writes (the ground floor, used by data and plots too),
checkpoints and model files, run folders and their lock, record files."""
