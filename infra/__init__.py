"""The CDK app: one construct per unit and a stack composing them."""
