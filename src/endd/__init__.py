"""endd: Ensemble Distribution Distillation (Malinin, Mlodozeniec & Gales, ICLR 2020).

Train an ensemble, distill it into one Prior Network (a network whose output parametrises a
Dirichlet), and read off the ensemble's accuracy and its split of uncertainty into data and
knowledge uncertainty at the cost of a single model.
"""

__version__ = "0.1.0"
