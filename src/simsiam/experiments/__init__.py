"""The paper's tables as runnable experiments: `reproduce` (the ablations of Sec. 4 and the
hypothesis experiments of Sec. 5) and `compare` (SimSiam against SimCLR, BYOL and SwAV, Table 4).
Both go through one runner (`runner.run_variants`: train each configuration once, reuse finished
runs of the same code), one table writer (`tables`) and one plot helper (`plots`).
"""
