package kad

// valuesConfig holds the values side's settings.
type valuesConfig struct{}

func defaultValuesConfig() valuesConfig { return valuesConfig{} }

func (v *valuesConfig) validate(c *config) []error { return nil }

// valuesState is the values side's runtime state.
type valuesState struct{}

func (d *DHT) initValues() error  { return nil }
func (d *DHT) startValues()       {}
func (d *DHT) closeValues() error { return nil }
