"""What a trained run gives: its evaluation, predictions for new files, the HTML report and model card, the bundle, the
Plotly charts.
"""
