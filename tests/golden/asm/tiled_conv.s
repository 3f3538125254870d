# snuc assembly (docs/isa.md): @tiled_conv on pcm-256x256
# a timestep every 3458 cycles (lower bound 3458); latency 3481 cycles, 2 pipeline stage(s)
program @tiled_conv {
  target "pcm-256x256" {
    rows = 256
    cols = 256
    cores = 64
    chips = 1
    devices_per_polarity = 1
    g_max_us = 25.0
    conductance_levels = 0
    dac_bits = 8
    adc_bits = 8
    input_phases = 1
    clock_ghz = 1.0
    mvm_cycles = 133
    energy_mvm_pj = 13400.0
    t0_s = 20.0
    t_read_ns = 250.0
    prog_noise_scale = 1.0
    read_noise_scale = 1.0
    drift_scale = 1.0
    digital_lanes = 32
    energy_digital_op_pj = 1.0
    noc_hop_cycles = 2
    noc_bytes_per_cycle = 32
    energy_noc_byte_pj = 1.0
    chip_link_cycles = 100
    energy_chip_link_byte_pj = 10.0
    neuron_snu_cycles = 1
    neuron_snu_energy_pj = 3.5
    neuron_lif_sub_cycles = 1
    neuron_lif_sub_energy_pj = 2.5
    neuron_if_cycles = 1
    neuron_if_energy_pj = 2.0
    neuron_cuba_cycles = 1
    neuron_cuba_energy_pj = 4.0
    neuron_li_cycles = 1
    neuron_li_energy_pj = 1.0
  }
  timing {ii = 3458, latency = 3481, lower_bound = 3458}
  tile 0 @conv.w {layer = "conv", rows = [0, 18], cols = [0, 4], crossbar = 0, xbar_row = 0, xbar_col = 0, dac = [-1.0, 1.0], adc_range = 20.5}
  tile 1 @fc.w {layer = "fc", rows = [0, 32], cols = [0, 5], crossbar = 0, xbar_row = 18, xbar_col = 0, dac = [0.0, 1.0], adc_range = 0.0}
  tile 2 @fc.w {layer = "fc", rows = [32, 64], cols = [0, 5], crossbar = 1, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 0.0}
  gdu 0 {
    input %x : f32[B, 2, 5, 5]
    input %h : f32[B, 64]
    buf %patches : f32[B, 5, 5, 18]
    buf %fc : f32[B, 5]
    buf %flat : f32[B, 100]
       0: im2col %patches = %x {kernel = [3, 3], strides = [1, 1], pads = [1, 1, 1, 1], dilations = [1, 1], n = 450, ops = 1}  # 15 cycles, 450.0 pJ
       0: send %h -> core 1 {bytes = 32, window = [32, 64]}  # 5 cycles, 64.0 pJ
       1: send %h -> core 0 {bytes = 32, window = [0, 32]}  # 3 cycles, 32.0 pJ
      15: send %patches -> core 0 {bytes = 450}  # 17 cycles, 450.0 pJ
     146: recv %fc <- core 0
    3458: sync
    3481: recv %flat <- core 0
    6916: sync
    output %flat
    output %fc
  }
  core 0 {
    buf %h : f32[B, 64]
    buf $fc_t1 : i32[B, 5]
    buf %patches : f32[B, 5, 5, 18]
    buf $conv_t0 : i32[B, 5, 5, 4]
    buf %fc_t1 : f32[B, 5]
    buf $fc_t2 : i32[B, 5]
    buf %fc_t2 : f32[B, 5]
    buf %fc : f32[B, 5]
    buf %conv_t0 : f32[B, 5, 5, 4]
    buf %flat : f32[B, 100]
       4: recv %h <- gdu 0
       4: mvm $fc_t1 = %h {tile = 1, rows = 32, phases = 1, vectors = 1}  # 133 cycles, 1675.0 pJ
      32: recv %patches <- gdu 0
     137: mvm $conv_t0 = %patches {tile = 0, rows = 18, phases = 1, vectors = 25}  # 3325 cycles, 23554.7 pJ
     137: adc %fc_t1 = $fc_t1 {tile = 1, n = 5}  # 1 cycle, 5.0 pJ
     141: recv $fc_t2 <- core 1
     141: adc %fc_t2 = $fc_t2 {tile = 2, n = 5}  # 1 cycle, 5.0 pJ
     142: acc %fc = %fc_t1, %fc_t2 {n = 5, ops = 1}  # 1 cycle, 5.0 pJ
     143: send %fc -> gdu 0 {bytes = 20}  # 3 cycles, 20.0 pJ
    3458: sync
    3462: adc %conv_t0 = $conv_t0 {tile = 0, n = 100}  # 4 cycles, 100.0 pJ
    3466: reshape %flat = %conv_t0 {shape = [B, 100], n = 100, ops = 0}
    3466: send %flat -> gdu 0 {bytes = 400}  # 15 cycles, 400.0 pJ
    6916: sync
  }
  core 1 {
    buf %h : f32[B, 64]
    buf $fc_t2 : i32[B, 5]
       5: recv %h <- gdu 0
       5: mvm $fc_t2 = %h {tile = 2, rows = 32, phases = 1, vectors = 1}  # 133 cycles, 1675.0 pJ
     138: send $fc_t2 -> core 0 {bytes = 5}  # 3 cycles, 5.0 pJ
    3458: sync
    6916: sync
  }
}
