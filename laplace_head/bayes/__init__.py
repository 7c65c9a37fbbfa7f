"""Stage 6 and the posterior API: the variant vocabulary, the laplace-torch seam, the fit and its
tuning and report, the posterior's file format, the predictive maths and the Posterior."""
