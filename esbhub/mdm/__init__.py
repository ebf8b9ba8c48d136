"""Master-data management: standardize → block → match → cluster → survive → golden record.

Matching engine: :mod:`esbhub.mdm.standardize`, :mod:`esbhub.mdm.match`, :mod:`esbhub.mdm.cluster`.
Synthetic test data: :mod:`esbhub.mdm.synth`.
"""
