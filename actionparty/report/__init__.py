"""Reports: tables and figures rebuilt from results/."""
