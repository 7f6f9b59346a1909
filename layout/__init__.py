"""neuron-layout: lay out a trained network's hidden neurons in 3D by what they do."""
