"""One module per pipeline stage; the order lives in automation.pipeline.STAGES."""
