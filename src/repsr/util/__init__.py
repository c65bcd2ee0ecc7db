"""Small utilities every layer may use: errors users can fix, the one atomic writer, process
settings of entry points, timers, and what the hardware offers. Imports nothing else of repsr.
"""
