"""SavedModel archives, publishing, warmup records. Imports `data`, `features`, `model`, `detection`, `ops`.
"""
