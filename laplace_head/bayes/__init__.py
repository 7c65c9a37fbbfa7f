"""Stage 6 and the posterior API: the laplace-torch layer, fit, hyperparameter tuning, the
predictive maths and the Posterior."""
