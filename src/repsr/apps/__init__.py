"""Programs built on the layers below: `repsr bench`, the quickstart demo, the studies, their recipes
and plots.
"""
