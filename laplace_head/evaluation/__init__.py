"""Stage 7 and figures: calibration statistics, the evaluation of four predictors, plots,
sanity panels of packed rows."""
