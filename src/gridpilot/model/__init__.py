"""Grid model: import (pandapower, simbench), placement of measurements, the calculation engine."""
