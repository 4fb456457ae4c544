"""kmscale.evaluation: scores of downscaled ensembles against the truth.

Modules (import what you need; nothing heavy is imported here):

- ``probabilistic``: ``CRPS(fair=True)``, ``CRPSSkill``, ``CRPSSpread``, ``crps_summary``,
  ``EnsembleMeanMSE``/``EnsembleMeanRMSE``, ``EnsembleVariance``/``EnsembleSpread``,
  ``SpreadSkillRatio``, ``RankHistogram``; numpy kernels ``crps_parts``, ``crps_ensemble``,
  ``rank_of_truth``.
- ``deterministic``: ``MSE``, ``RMSE``, ``MAE``, ``Bias``, ``SSIM`` (``ssim_field``).
- ``quantiles``: ``QuantileError``, ``ThresholdWeightedCRPS`` (``quantile_error``, ``twcrps``).
- ``precipitation``: ``FSS`` (``fss_field``).
- ``density``: ``DensityHistogram``, ``density_comparison``, ``log_density_error``.
- ``spectra``: ``zonal_power_spectrum``/``zonal_spectrum`` (km wavelengths),
  ``radial_power_spectrum``/``radial_spectrum`` (masked points documented).
- ``torch_metrics``: ``crps_fair``, ``crps_standard``, ``spread_skill_ratio``,
  ``zonal_power_spectrum`` in torch (accelerators, differentiable losses), tested
  against the numpy definitions.
- ``scoring``: ``score(forecasts, truth, ScoreOptions())`` -> metrics Dataset,
  ``write_metrics``; it checks inputs (``score_inputs``), scores each field through the
  metric classes (``score_fields``) and assembles the result (``score_result``).
- ``baselines``: bilinear/bicubic interpolation of the predictors as forecasts.
- ``report``: ``write_report``; ``cli``: ``kmscale score`` / ``report``.

Metrics are small dataclasses with ``pointwise(forecast, truth)`` and
``compute(forecast, truth, reduce_dims=, mask=, area_weighted=)`` over named dims
(``member``; ``lat``/``lon`` or ``y``/``x``), in the style of weatherbench2.
"""
