"""The math layer: noise schedules, formulations (eps/x0/v on a discrete schedule, EDM, flow matching), the
training loss, classifier-free guidance and the samplers, all over plain tensors in the noise level sigma.
Nothing here imports the IO, training or CLI layers."""
